"""`derm_cases`: Derm-style cases of several images with one label (generic CSV, SCIN, HAM10000)."""
