/*
 * The plan cache (engine.h, wf_plan_then_cached): what a run kept in memory between plans
 * remembers of its maps, so that a plan reads only the items whose records changed. The
 * cache holds the snapshot.nodes object its memos describe; the caller notes every record
 * it sets there. plan.c classifies the items (wf_plan_map); this file keeps the memos.
 */
#include "workflow_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct wf_plan_cache {
        const struct wf_workflow *wf;
        json_t *nodes; /* the snapshot.nodes the memos describe (held), or NULL */
        struct wf_map_memo *maps;
        size_t nmaps, cap;
};

struct wf_plan_cache *wf_plan_cache_new(void)
{
        return calloc(1, sizeof(struct wf_plan_cache));
}

void wf_map_memo_clear(struct wf_map_memo *m)
{
        json_decref(m->items);
        free(m->states);
        free(m->dirty);
        *m = (struct wf_map_memo){.node = m->node};
}

static void cache_clear(struct wf_plan_cache *c)
{
        for (size_t i = 0; i < c->nmaps; i++)
                wf_map_memo_clear(&c->maps[i]);
        c->nmaps = 0;
        json_decref(c->nodes);
        c->nodes = NULL;
        c->wf = NULL;
}

void wf_plan_cache_free(struct wf_plan_cache *c)
{
        if (!c)
                return;
        cache_clear(c);
        free(c->maps);
        free(c);
}

bool wf_plan_cache_knows(const struct wf_plan_cache *c, const struct wf_workflow *wf,
                         const json_t *nodes)
{
        return c->nodes && c->wf == wf && c->nodes == nodes;
}

void wf_plan_cache_begin(struct wf_plan_cache *c, const struct wf_workflow *wf, const json_t *nodes)
{
        if (wf_plan_cache_knows(c, wf, nodes))
                return;
        cache_clear(c);
        c->wf = wf;
        c->nodes = json_incref((json_t *)nodes);
}

struct wf_map_memo *wf_plan_cache_map(struct wf_plan_cache *c, const struct wf_node *n)
{
        for (size_t i = 0; i < c->nmaps; i++)
                if (c->maps[i].node == n)
                        return &c->maps[i];
        if (c->nmaps == c->cap) {
                size_t cap = c->cap ? c->cap * 2 : 4;
                struct wf_map_memo *maps = realloc(c->maps, cap * sizeof(*maps));
                if (!maps)
                        return NULL;
                c->maps = maps;
                c->cap = cap;
        }
        c->maps[c->nmaps] = (struct wf_map_memo){.node = n, .all_dirty = true};
        return &c->maps[c->nmaps++];
}

int wf_map_memo_reset(struct wf_map_memo *m, json_t *items, size_t count)
{
        wf_map_memo_clear(m);
        m->all_dirty = true;
        m->states = count ? malloc(count) : NULL;
        if (count && !m->states)
                return -ENOMEM;
        m->items = json_incref(items);
        m->count = count;
        return 0;
}

/* "fan[12]": the map "fan" (base bytes) and item 12; false for any other id. */
static bool item_id(const char *id, size_t *base, size_t *index)
{
        const char *open = strrchr(id, '[');
        size_t len = strlen(id), i = 0;

        if (!open || open == id || len < 3 || id[len - 1] != ']' || open + 2 > id + len - 1)
                return false;
        for (const char *d = open + 1; d < id + len - 1; d++) {
                if (*d < '0' || *d > '9' || i > WF_MAX_MAP_ITEMS)
                        return false;
                i = i * 10 + (size_t)(*d - '0');
        }
        *base = (size_t)(open - id);
        *index = i;
        return true;
}

void wf_plan_cache_note(struct wf_plan_cache *c, const char *node_id)
{
        size_t base, index;

        if (!c || !node_id || !item_id(node_id, &base, &index))
                return; /* static nodes and loop iterations are read at every plan */
        for (size_t k = 0; k < c->nmaps; k++) {
                struct wf_map_memo *m = &c->maps[k];
                const char *id = m->node->id;
                if (strlen(id) != base || memcmp(id, node_id, base) != 0)
                        continue;
                if (m->all_dirty || index >= m->count)
                        return;
                if (m->ndirty == m->dirty_cap) {
                        size_t cap = m->dirty_cap ? m->dirty_cap * 2 : 64;
                        size_t *d = cap <= m->count ? realloc(m->dirty, cap * sizeof(*d)) : NULL;
                        if (!d) { /* more notes than items, or no memory: read them all */
                                m->all_dirty = true;
                                return;
                        }
                        m->dirty = d;
                        m->dirty_cap = cap;
                }
                m->dirty[m->ndirty++] = index;
                return;
        }
}
