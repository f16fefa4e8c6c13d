"""Reports: the JSON document, thresholds, JUnit."""
