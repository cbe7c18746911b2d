"""Integrations with other packages; each module imports its package only when used."""
