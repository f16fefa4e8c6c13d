"""``python -m elf_async.jobs._worker``: one process of `send --workers N`
(see elf_async.jobs.workers)."""

from elf_async.jobs.workers import worker_main

if __name__ == "__main__":
    worker_main()
