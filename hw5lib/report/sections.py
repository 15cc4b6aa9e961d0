"""The report's sections: the four questions and the appendix, with their headings. The PDF
writer lays them out in this order; --notes names its sections by the same question ids."""

QUESTIONS: tuple[str, ...] = ("Q1", "Q2", "Q3", "Q4")
SECTION_HEADINGS: dict[str, str] = {
    "Q1": "Q1. Saliency maps: which pixels does the classifier's score depend on?",
    "Q2": "Q2. Filters: what input excites a filter, and where does it fire on real images?",
    "Q3": "Q3. LIME and the confusion matrix: what drives a prediction, and why do some "
    "classes do well?",
    "Q4": "Q4. Other methods: what do {} show?",
    "Appendix": "Appendix",
}
# Q4's methods by figure id, in the report's order; the heading names those the run drew.
Q4_METHODS: tuple[tuple[str, str], ...] = (
    ("q4_smoothgrad", "SmoothGrad"),
    ("q4_grad_x_input", "Gradient x Input"),
    ("q4_integrated_gradients", "Integrated Gradients"),
    ("q4_shap", "SHAP"),
    ("q4_grad_cam", "Grad-CAM"),
    ("q4_layercam", "LayerCAM"),
    ("q4_deepdream", "DeepDream"),
)


def section_heading(section: str, figure_ids: set[str]) -> str:
    """The section's heading; Q4's names the methods among ``figure_ids`` (all when none)."""
    heading = SECTION_HEADINGS[section]
    if section != "Q4":
        return heading
    names = [name for fid, name in Q4_METHODS if fid in figure_ids] or [n for _, n in Q4_METHODS]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return heading.format(listed)
