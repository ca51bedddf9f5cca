"""fluojax."""
