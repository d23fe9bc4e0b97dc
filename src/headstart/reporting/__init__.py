"""Pages and pictures: the run report, the doctor page, feature maps, plots, annotated images."""
