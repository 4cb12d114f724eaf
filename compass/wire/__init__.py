"""Wire formats (msgspec Structs) that clients send and the pipeline consumes."""
