"""Pure mapping of decoded OTLP requests to usage events. Imports no I/O."""
