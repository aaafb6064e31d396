// placeholder: being written
#include "model/config.h"
