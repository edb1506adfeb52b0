"""Our HTTP/1.1 server for clients: protocol, runner, drain. It knows no wire format."""
