"""Drop-in integrations with other libraries (the only part of pydiff that imports them)."""
