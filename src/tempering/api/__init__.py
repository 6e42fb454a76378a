"""The REST API: OpenAI's fine-tuning protocol (files, jobs, events, checkpoints, models) plus Tempering's
own resources, built by ``create_app(settings)``. Wire models in ``protocol`` import no torch; routers
convert wire ↔ core once; domain errors become OpenAI's error envelope in one handler.
"""
