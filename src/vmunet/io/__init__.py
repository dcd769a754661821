"""Files, one module per format family, each reading and writing its format with the header checks first.

- ``images``: Pillow formats (PNG, JPEG, TIFF, BMP): the one image policy (EXIF, bit depth, palette, alpha, frames)
- ``nifti``: nibabel, the (Z, X, Y) axis rule; ``sitk``: .mha/.mhd/.nrrd through SimpleITK; ``h5``: Synapse .npy.h5
- ``dicom``: series discovery and reading, DICOM SEG writing (highdicom)
- ``cases``: one nnU-Net case, a file per channel in any of those formats
- ``limits``: the size and self-containment checks every reader runs on the header; ``checks``: the arrays read
- ``paths``: file kinds, stems and folder listings; ``files``: atomic writes and outputs that replace nothing
"""
