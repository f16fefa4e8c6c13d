"""``python -m elf_async._worker``: one process of `send --workers N` (see elf_async.workers)."""

from elf_async.workers import worker_main

if __name__ == "__main__":
    worker_main()
