"""The study's report: figures and one self-contained HTML page."""
