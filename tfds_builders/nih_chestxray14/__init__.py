"""`nih_chestxray14`: NIH ChestX-ray14 with the official patient-level split lists."""
