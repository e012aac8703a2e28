"""Entry point of python -m keras_music.studio."""

from keras_music.studio.app import main

if __name__ == "__main__":
    main()
