"""What a run writes for people: the figures (matplotlib), report.pdf (fpdf2), the student's
notes, and the atomic, byte-reproducible file writes and portable paths they rest on."""
