"""The DICOM node: a PACS or scanner sends an NCCT series, the sCECT (marked synthetic) goes back into the same
study. Receiving, the durable queue, the worker and the sending each have their own module."""
