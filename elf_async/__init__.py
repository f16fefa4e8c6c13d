"""elf-async: an asyncio load generator for AWS IoT Core."""

__version__ = "0.1.0"
