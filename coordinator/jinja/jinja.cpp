// being written
#include "coordinator/jinja/jinja.h"
