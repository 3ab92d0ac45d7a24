"""What a person looks at: CAM overlays and the HTML report."""
