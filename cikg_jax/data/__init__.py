"""Reading, validating, splitting, sampling and downloading the KGAT-style datasets."""
