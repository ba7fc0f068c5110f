"""The Atlas dashboard: fleet list, machine detail and export menu."""
