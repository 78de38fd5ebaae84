"""The operator console: dashboard, shared page helpers and SVG charts (the pages live with their domains)."""
