"""The report's sections: the four questions and the appendix, with their headings. The PDF
writer lays them out in this order; --notes names its sections by the same question ids."""

QUESTIONS: tuple[str, ...] = ("Q1", "Q2", "Q3", "Q4")
SECTION_HEADINGS: dict[str, str] = {
    "Q1": "Q1. Saliency maps: which pixels does the classifier's score depend on?",
    "Q2": "Q2. Filters: what input excites a filter, and where does it fire on real images?",
    "Q3": "Q3. LIME and the confusion matrix: what drives a prediction, and why do some "
    "classes do well?",
    "Q4": "Q4. Other methods: what do SmoothGrad, Gradient x Input, Integrated Gradients, "
    "Grad-CAM, LayerCAM and DeepDream show?",
    "Appendix": "Appendix",
}
