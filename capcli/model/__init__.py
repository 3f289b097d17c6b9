"""The captioning model: a ResNet encoder and an attention (or plain) LSTM decoder."""
