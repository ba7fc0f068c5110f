"""Widget collectors. Each widget is a pure parser over command output, tested
against real captured outputs, plus a thin runner that calls the OS."""
