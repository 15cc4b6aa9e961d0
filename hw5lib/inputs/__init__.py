"""What goes into the model: image files read as the student's pipeline read them, data sets and
splits, the preprocessing, the input check that finds the convention the model was trained
with, the explained images, --replay's recorded decisions, and the synthetic sample sets."""
