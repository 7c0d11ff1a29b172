"""Raw data to arrays: dataset readers, audio decoding, MFCC frames, token ids."""
