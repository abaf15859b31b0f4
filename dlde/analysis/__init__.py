"""What is measured and plotted on trained models: COCO evaluation, embedding geometry,
calibration, few-shot, open-set and retrieval protocols, sweep aggregation, figures and widgets."""
