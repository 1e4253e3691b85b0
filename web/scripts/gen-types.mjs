// Generates src/api/schema.gen.ts (TypeScript types of every schema and route) from
// docs/openapi.json, the API's canonical contract, with openapi-typescript. The client
// (src/api/client.ts) is typed by it, so `tsc` fails when the dashboard uses a field the API
// does not document. The file is written only when its text changes, so an unchanged
// contract does not make the next build run again.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";

const here = fileURLToPath(new URL(".", import.meta.url));
const source = pathToFileURL(`${here}/../../docs/openapi.json`);
const target = `${here}/../src/api/schema.gen.ts`;
const ast = await openapiTS(source);
const text =
  "// Generated from docs/openapi.json by web/scripts/gen-types.mjs; do not edit.\n" +
  astToString(ast);
if (!existsSync(target) || readFileSync(target, "utf8") !== text) writeFileSync(target, text);
