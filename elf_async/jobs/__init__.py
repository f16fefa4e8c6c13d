"""Jobs: a command from its options to its report, combining the control and data planes.
`--local` is resolved here, once per command (elf_async.jobs.target.aim)."""
