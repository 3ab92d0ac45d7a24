"""Maps from a running model: CAM head detection, CAM itself, and the Grad-CAM family in `methods/`."""
