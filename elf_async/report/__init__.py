"""Reports: their model (the schema as types), the JSON document, verdicts, thresholds, JUnit."""
