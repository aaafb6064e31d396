// being written
#include "coordinator/chat_template.h"
