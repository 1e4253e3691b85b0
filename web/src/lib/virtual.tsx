// A list that renders only the rows in view (fixed row height), so 20,000 events or 10,000
// map items scroll smoothly. With `follow`, it stays at the bottom as rows arrive.
// `onRange` hears which rows are drawn, so a list whose rows load lazily can fetch them.
import type { ComponentChildren } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";

export function VirtualList<T>({
  items,
  rowHeight,
  height,
  row,
  follow = false,
  label,
  onScrollAway,
  onRange,
}: {
  items: T[];
  rowHeight: number;
  height: number;
  row: (item: T, index: number) => ComponentChildren;
  follow?: boolean;
  label: string;
  onScrollAway?: () => void;
  onRange?: (first: number, last: number) => void;
}) {
  const ref = useRef<HTMLDivElement>(null);
  // following: drawn from the end at once (not first from the top, then scrolled)
  const [top, setTop] = useState(() => (follow ? Math.max(0, items.length * rowHeight - height) : 0));
  useLayoutEffect(() => {
    const el = ref.current;
    if (follow && el) {
      el.scrollTop = el.scrollHeight;
      setTop(el.scrollTop);
    }
  }, [items.length, follow]);
  const first = Math.max(0, Math.floor(top / rowHeight) - 10);
  const last = Math.min(items.length, Math.ceil((top + height) / rowHeight) + 10);
  useEffect(() => {
    onRange?.(first, last);
  }, [first, last]);
  const rows = [];
  for (let i = first; i < last; i++)
    rows.push(
      <div class="vrow" role="listitem" key={i} style={{ top: i * rowHeight, height: rowHeight }}>
        {row(items[i], i)}
      </div>,
    );
  return (
    <div
      class="virtual"
      ref={ref}
      role="list"
      aria-label={label}
      tabIndex={0}
      style={{ height }}
      onScroll={(e) => {
        const el = e.currentTarget as HTMLDivElement;
        setTop(el.scrollTop);
        if (follow && el.scrollTop + el.clientHeight < el.scrollHeight - rowHeight * 2) onScrollAway?.();
      }}
    >
      <div style={{ height: items.length * rowHeight, position: "relative" }}>{rows}</div>
    </div>
  );
}
