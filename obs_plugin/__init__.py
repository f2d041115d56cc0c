"""Everything that talks to OBS: the obs-websocket client, scene -> preset binding, the outputs OBS
reads (virtual camera, local network stream) and ``avatarcast obs setup``."""
