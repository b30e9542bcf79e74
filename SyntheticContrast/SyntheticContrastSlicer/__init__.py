"""Slicer-side collaborators of the module's Logic, one per concern (they import slicer and qt; the engine never does).

``process`` runs the engine CLI as a child; ``synthesis`` turns a run into an output node; ``dependencies`` checks
and installs Python packages; ``views`` owns the linked layout and overlay; ``annotation`` the ROI clicks and CNR
tables; ``reading`` the blinded reading session; ``sampledata`` the phantom case in Sample Data.
"""
