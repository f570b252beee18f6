"""The speed stack: each part a setting of the generation API (`pipeline.settings.SpeedSettings`),
applied by `pipeline.runner.load_pipeline`.

    backends      attention backend choice through diffusers' dispatch (`set_attention_backend`)
    lora          LoRA files in the Wan-original, musubi and diffusers layouts; fuse / unfuse
    quantization  fp8 weight storage, torchao int8 / fp8 weight-only, group and model offload
    compile       regional torch.compile of the repeated transformer blocks
    caches        step caches through diffusers' hooks (first-block, MagCache, TaylorSeer) and a
                  TeaCache-style cache; `calibration` measures them (`anytalker calibrate-cache`)
    stack         the order `runner.load_pipeline` applies them in
    parallel      context parallelism (several GPUs make one video)
"""
