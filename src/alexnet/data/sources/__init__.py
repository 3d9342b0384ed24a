"""Dataset sources: importers that turn raw data (archives, folders, generators) into the prepared format."""
