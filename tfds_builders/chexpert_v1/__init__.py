"""`chexpert_v1`: CheXpert v1.0 with raw labels; uncertainty policies are applied at load time."""
