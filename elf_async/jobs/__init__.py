"""Jobs: a command from its options to its report, combining the control and data planes."""
