"""Persona scenario tests: ``voxline test`` speaks YAML conversations through the real
pipeline and checks what the bot said (as heard), which tools it called, and how fast."""
