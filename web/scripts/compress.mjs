// Writes a .gz beside every text file of the build (the API sends it to clients that accept
// gzip) and prints the gzipped size of what the browser loads; exits 1 when the JavaScript
// and CSS together pass the budget (300 KB gzipped).
import { readdirSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { gzipSync, constants } from "node:zlib";

const BUDGET = 300 * 1024;
const out = process.env.AGENTLY_WEB_OUT || "dist";
let total = 0;
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (/\.(html|js|css|svg|json|txt)$/.test(name)) {
      const gz = gzipSync(readFileSync(path), { level: constants.Z_BEST_COMPRESSION });
      writeFileSync(`${path}.gz`, gz);
      if (/\.(js|css)$/.test(name)) total += gz.length;
    }
  }
}
walk(out);
console.log(`dashboard: ${(total / 1024).toFixed(1)} KB of JavaScript and CSS, gzipped (budget ${BUDGET / 1024} KB)`);
if (total > BUDGET) process.exit(1);
