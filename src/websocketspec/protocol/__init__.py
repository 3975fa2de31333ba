"""The wire format, sans I/O: messages, codec, values and the filter operator table."""
