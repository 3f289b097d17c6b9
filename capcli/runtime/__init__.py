"""The machine a command runs on: device and precision (`device`), several processes under
torchrun (`distributed`), progress bars (`progress`), what is not public torch API
(`torch_compat`, the one module that touches it), the memory allocator (`allocator`), worker pools
for prep (`parallel`), what `capcli env` reports (`environment`) and `capcli bench` (`bench`)."""
