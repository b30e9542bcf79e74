"""Reading CT volumes from every format an archive gives, the rules for each variant, voxel order, and the derived
DICOM series written back."""
