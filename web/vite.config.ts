// Builds the dashboard into AGENTLY_WEB_OUT (the build directory's web/, set by
// cmake/web.cmake) or dist/. Hashed file names under assets/ let the API cache them forever.
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: process.env.AGENTLY_WEB_OUT || "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2020",
    sourcemap: false,
    reportCompressedSize: false,
  },
  resolve: {
    alias: { react: "preact/compat", "react-dom": "preact/compat" },
  },
});
