"""When not to trust a synthetic image: out-of-distribution checks of the input, the anatomy they measure, and the
calibration of the uncertainty map against real errors."""
