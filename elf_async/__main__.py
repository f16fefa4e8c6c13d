from elf_async.cli import main

main()
