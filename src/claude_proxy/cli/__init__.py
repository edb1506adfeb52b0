"""The command line: `claude-proxy serve | emulator | keys | logs | usage | db`."""
