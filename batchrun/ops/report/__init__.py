"""The HTML report of one batch: its data read from the store (data), its SVG charts
(charts) and the page (page). Imports ops-level and lower modules only."""
